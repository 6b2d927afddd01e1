//! PKCS#11-held TLS private keys (being written).
