"""DBOS workflows: the order of steps and their compensation, nothing else."""
