"""The render engine: arrays in, arrays out; no HTTP, no jobs, no environment variables."""
