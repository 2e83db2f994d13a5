"""The classic experiments as data (:mod:`imgcls.studies.definitions`) and one runner that trains every variant x
seed and writes a table, plots and a short reading (:mod:`imgcls.studies.runner`): ``imgcls study NAME``."""

from imgcls.studies.definitions import STUDIES, StudyDefinition, Variant, get_study, list_studies

__all__ = ["STUDIES", "StudyDefinition", "Variant", "get_study", "list_studies"]
