"""The core's own hook implementations, registered before any entry point."""
