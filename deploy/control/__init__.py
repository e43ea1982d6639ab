"""The control plane: apps, versions, their files and the default version (``python -m deploy.control``)."""
