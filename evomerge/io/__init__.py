"""Files in and out, below every other layer: lazy tensor reads from (sharded) checkpoints, a
byte-bounded sharded safetensors writer that only renames a folder into place once it is complete,
and mergekit's YAML config read into typed records."""
