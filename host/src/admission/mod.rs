//! Admission, with no HTTP in it: the API server's AdmissionReview format
//! ([`review`]) and the decision on one review ([`decision`]). The listener
//! that reads reviews off HTTPS is `serve::admission`; `tollgate eval`
//! decides through the same [`decision::decide`].

pub mod decision;
pub mod review;
