"""Experiments over run folders: ``imgcls compare`` (side-by-side table and curves) and ``imgcls tune`` (Optuna)."""
