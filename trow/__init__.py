"""trow: an in-cluster OCI registry, pull-through cache and admission webhook, on Twisted."""

__version__ = "0.1.0"
