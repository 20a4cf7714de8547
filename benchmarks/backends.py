"""What each benchmarked backend does for one figure: kconvert's runtime, Keras (compiled call, predict,
eager call) and ONNX Runtime. Imported after the thread settings are in the environment."""
import numpy as np


def batches(x, batch_size):
    """Consecutive row slices of x, the last one possibly short."""
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


class Runtime:
    """kconvert.runtime on a converted graph folder."""

    name = "kconvert"

    def __init__(self, graph_dir):
        from kconvert.runtime import load

        self.model = load(graph_dir)

    def predict(self, x, batch_size):
        """Probabilities for x, batch by batch."""
        return self.model.predict(x, batch_size=batch_size)

    def train_epoch(self, x, y, batch_size):
        """One epoch of the graph's recorded optimizer and loss."""
        self.model.fit(x, y, epochs=1, batch_size=batch_size, shuffle=True, seed=0)


class RuntimeProcesses(Runtime):
    """kconvert.runtime with each batch's rows split between this process and worker processes
    (Model.worker_processes), started once here: they share no GIL."""

    name = "kconvert_processes"

    def __init__(self, graph_dir, threads):
        super().__init__(graph_dir)
        self.workers = self.model.worker_processes(threads)

    def predict(self, x, batch_size):
        """Probabilities for x, batch by batch."""
        return self.workers.predict(x, batch_size=batch_size)


class KerasCompiled:
    """The Keras model's inference call inside a tf.function (traced once per input signature)."""

    name = "keras_compiled"

    def __init__(self, model, tf):
        spec = tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), model.inputs[0].dtype)
        self.function = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        self.model = model

    def predict(self, x, batch_size):
        """Probabilities for x, one compiled call per batch."""
        return np.concatenate([self.function(b).numpy() for b in batches(x, batch_size)])

    def train_epoch(self, x, y, batch_size):
        """One epoch of model.fit (its compiled train step)."""
        self.model.fit(x, y, epochs=1, batch_size=batch_size, shuffle=True, verbose=0)


class KerasPredict:
    """keras.Model.predict, the call most users make."""

    name = "keras_predict"

    def __init__(self, model):
        self.model = model

    def predict(self, x, batch_size):
        """Probabilities for x through model.predict."""
        return self.model.predict(x, batch_size=batch_size, verbose=0)


class KerasEager:
    """The Keras model called eagerly, model(x): what a script does for one request."""

    name = "keras_eager"

    def __init__(self, model):
        self.model = model

    def predict(self, x, batch_size):
        """Probabilities for x, one eager call per batch."""
        return np.concatenate([np.asarray(self.model(b, training=False)) for b in batches(x, batch_size)])


class OnnxRuntime:
    """ONNX Runtime on the model exported by tf2onnx through a tf.function signature."""

    name = "onnxruntime"

    def __init__(self, model, tf, threads, path):
        import onnxruntime
        import tf2onnx

        spec = tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), model.inputs[0].dtype, name="input")
        function = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        tf2onnx.convert.from_function(function, input_signature=[spec], opset=17, output_path=path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # ONNX Runtime's idle worker threads spin by default. On 2 cores that took the CPU from every other
        # backend in this process, ORT's own calls included (BiLSTM batch-1: kconvert 2.81 vs 1.53 ms,
        # ORT 3.4-5.7 vs 2.8 ms with spinning off), so spinning is off.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, x, batch_size):
        """Probabilities for x, one session run per batch."""
        return np.concatenate([self.session.run(None, {self.input_name: b})[0] for b in batches(x, batch_size)])
