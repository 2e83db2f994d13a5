"""An HTTP inference server (FastAPI) with micro-batching and a small web page: ``imgcls serve``."""
