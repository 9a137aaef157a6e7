"""Training score models (never imported by the sampling core)."""
