"""Kubernetes' Kernel Module Management (KMM): a project's Module resource, its kmod image's Dockerfile and a
preflight for the next kernel (``kmodkit kmm``).  :mod:`.export` makes the resources, :mod:`.dockerfile` the
image; ``images.toml`` holds each distro family's base image and install commands."""
