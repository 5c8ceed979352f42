use thiserror::Error;

/// Errors of the planner: the only fallible step is training a model.
#[derive(Debug, Error)]
pub enum Error {
    /// The regression's normal equations could not be solved (e.g. collinear features that
    /// the ridge term did not tame); the caller keeps its previous model.
    #[error("prediction: the regression could not be solved: {0}")]
    Unsolvable(String),
}
