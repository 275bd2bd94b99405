"""mbuma: a UMA-style slab allocator and mbufs, in Cython."""
