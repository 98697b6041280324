"""Training loops: C-GRPO (MARC's student), CaCoVID's policy optimisation and the synthetic reference model."""
