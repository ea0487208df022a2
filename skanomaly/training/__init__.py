"""Training engine: skorch nets and losses (the only place with backward()/step())."""
