"""Serving on NVIDIA Triton Inference Server.

`repository` writes a model repository from dlkit artifacts, `server` starts `tritonserver`
on it, and `client` talks to it in the model's own terms (images in, class names out).
"""
