"""SISA (Bourtoule et al.): sharded, isolated, sliced, aggregated training for exact unlearning."""
