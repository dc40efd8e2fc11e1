"""Pull-through cache of upstream registries (see docs/proxy.md)."""
