"""Plain torch training loops with the hooks recorded unlearning needs."""
