"""One module per family; `MODEL_CLASSES` maps config.model_type to its class."""
from .cohere import CohereModel
from .cohere2 import Cohere2Model
from .llama import LlamaModel

MODEL_CLASSES = {"llama": LlamaModel, "cohere": CohereModel, "cohere2": Cohere2Model}
