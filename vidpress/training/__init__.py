"""Training loops of the learned presses: C-GRPO (MARC's student) and CaCoVID's policy optimisation."""
