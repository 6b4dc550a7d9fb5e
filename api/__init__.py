"""The HTTP layer: thin routes over orders/, workflows/ and services/."""
