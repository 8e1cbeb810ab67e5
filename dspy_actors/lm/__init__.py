"""LM clients over httpx: providers, errors, retries, cache, usage."""
