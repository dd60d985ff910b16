//! Admission: the API server's AdmissionReview format ([`review`]) and the
//! decision on one review ([`decision`]), neither with HTTP in it; and the
//! [`listener`]'s requests, which read reviews off HTTPS. `tollgate eval`
//! decides through the same [`decision::decide`].

pub mod decision;
pub mod listener;
pub mod review;
