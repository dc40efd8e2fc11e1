"""Kubernetes admission webhook: image reference normalisation, validation and mutation."""
