"""`kubectl kubetune`: the kubectl plugin for FineTuneJobs and ModelDeployments (console script kubectl-kubetune)."""
