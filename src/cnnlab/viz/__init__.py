"""Pictures of what the network computes and sees, with matplotlib.

- :mod:`cnnlab.viz.explain`: the lecture's ideas on small examples, no trained model needed
  (convolution, edge filters, padding, pooling, batch normalization, dropout);
- :mod:`cnnlab.viz.show`: a trained model's filters, feature maps, predictions, confusion
  matrix, learning curves and architecture;
- :mod:`cnnlab.viz.report`: one self-contained HTML page per run, or per comparison;
- :mod:`cnnlab.viz.commands`: the ``cnnlab explain``, ``show`` and ``report`` commands.

Every picture is saved as a PNG (written to a temporary file, then renamed).
"""
