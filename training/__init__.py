"""DDP training on ICPC shards: a fresh compression level per sample per epoch."""
