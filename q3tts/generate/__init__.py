"""Generation: prompts, sampling, the decode core and its steps, frames to audio."""
