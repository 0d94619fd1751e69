"""Logic without FUSE: catalog, config, layout, query, the chunk store, retries."""
