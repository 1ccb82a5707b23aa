"""The floor: the least code that makes the same hops as busgate (edge → bus → responder →
runner), kept as the reference the benchmark measures busgate against."""
