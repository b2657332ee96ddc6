"""Source models: built-in architectures, adapters for any model, the trained built-in zoo."""
