"""Search engines behind one ask/tell interface, registered under the space file's names."""

from evomerge.search.engines import deap_ga, deap_nsga2, optuna_cmaes, optuna_nsga2, optuna_tpe, random_search
from evomerge.search.engines.base import ENGINES, Candidate, Engine

__all__ = ["ENGINES", "Candidate", "Engine", "deap_ga", "deap_nsga2", "optuna_cmaes", "optuna_nsga2",
           "optuna_tpe", "random_search"]
