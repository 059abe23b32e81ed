"""
A NumPy MLP on the digits
=========================

A one-hidden-layer network trained on scikit-learn's 8 × 8 digits with plain
NumPy: fastxent gives the loss and its gradient with respect to the logits
in one call, and backpropagation through the two layers is two matrix
products each.  The gradient buffer is allocated once and passed as
``out=`` at every step.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastxent

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)

rng = np.random.default_rng(0)
n, d = X_train.shape
h, m = 64, 10
W1 = (rng.standard_normal((d, h)) * np.sqrt(2 / d)).astype(np.float32)
b1 = np.zeros(h, np.float32)
W2 = (rng.standard_normal((h, m)) * np.sqrt(1 / h)).astype(np.float32)
b2 = np.zeros(m, np.float32)
G = np.empty((n, m), np.float32)  # dloss/dlogits, reused at every step

lr, losses, test_losses = 0.5, [], []
for _step in range(150):
    H = np.maximum(X_train @ W1 + b1, 0)  # ReLU hidden layer
    Z = H @ W2 + b2  # logits
    loss, _ = fastxent.cross_entropy_with_grad(Z, y_train, out=G)
    dH = (G @ W2.T) * (H > 0)
    W2 -= lr * (H.T @ G)
    b2 -= lr * G.sum(0)
    W1 -= lr * (X_train.T @ dH)
    b1 -= lr * dH.sum(0)
    losses.append(float(loss))
    Z_test = np.maximum(X_test @ W1 + b1, 0) @ W2 + b2
    test_losses.append(float(fastxent.cross_entropy(Z_test, y_test)))

accuracy = (np.argmax(Z_test, axis=1) == y_test).mean()
print(f"final training loss {losses[-1]:.4f}, test loss {test_losses[-1]:.4f}")
print(f"test accuracy {accuracy:.3f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogy(losses, label="training")
ax.semilogy(test_losses, label="test")
ax.set_xlabel("full-batch gradient step")
ax.set_ylabel("cross-entropy")
ax.set_title(f"MLP on the digits: test accuracy {accuracy:.3f}")
ax.legend()
fig.tight_layout()
plt.show()
