"""The per-node L4 proxy: captured pod traffic over HBONE mTLS (DESIGN.md section 7). See ARCHITECTURE.md."""
