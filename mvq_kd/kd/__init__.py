"""Knowledge-distillation losses, each a separate module composed in one training step."""
