"""Triton python-backend models. Each file is copied verbatim into a model repository as
`<version>/model.py`; they run inside Triton's python stub, not in dlkit."""
