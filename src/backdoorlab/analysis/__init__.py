"""Analysis tools: trigger sensitivity, saliency, feature studies."""
