//! Synthetic captures (placeholder until the generator lands).
