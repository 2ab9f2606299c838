"""embdim."""
