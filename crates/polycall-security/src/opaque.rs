//! OPAQUE zero-knowledge password login (being written).
