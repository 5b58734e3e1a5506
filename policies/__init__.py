"""The gateway's own policies, registered through the `llama_gateway.policies` entry points."""
