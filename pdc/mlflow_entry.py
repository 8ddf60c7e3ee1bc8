"""MLflow "model from code" entry: logged as the pyfunc's code, so loading it unpickles nothing."""

from mlflow.models import set_model

from pdc.mlflow_model import CorrDiffPyfunc

set_model(CorrDiffPyfunc())
