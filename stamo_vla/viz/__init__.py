"""Visualization: image sheets of decoded states, interpolation strips, rollout videos and plots."""
