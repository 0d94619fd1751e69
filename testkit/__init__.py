"""What tests and benchmarks share: synthetic libraries, configs, real servers, waiting."""
