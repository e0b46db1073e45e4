"""promptclimb's CLIP side: backbones (open_clip), datasets and few-shot splits, the
feature cache, template scoring and output-side adapters. Never talks to an LLM."""
