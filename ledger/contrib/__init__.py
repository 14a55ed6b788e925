"""Framework integrations. The core package never imports a framework."""
