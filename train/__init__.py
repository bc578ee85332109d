"""Stage 2: teacher-reference-student heads and baselines trained on cached features."""
