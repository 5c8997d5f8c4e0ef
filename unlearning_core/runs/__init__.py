"""Training runs as stored artifacts: spec, index, ledger, train and open."""
