"""Defense plugins (imported as ``robustkit.defenses``)."""
