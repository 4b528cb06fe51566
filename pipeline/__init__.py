"""The compression pipeline: modality compressors, sources, shard writing and the Ray job."""
