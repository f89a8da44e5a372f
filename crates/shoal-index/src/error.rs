//! Index errors: what went wrong and with which file.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("cannot open the index {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: Box<redb::DatabaseError>,
    },
    #[error("the index {} was written by a newer shoal (schema {found}); upgrade shoal or remove the file to rebuild it", path.display())]
    Newer { path: PathBuf, found: u32 },
    #[error("the index is damaged ({0}); remove it to rebuild it from the disk")]
    Corrupt(&'static str),
    #[error("index: {0}")]
    Db(Box<redb::Error>),
    #[error("cannot encode an index entry: {0}")]
    Encode(#[source] postcard::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl IndexError {
    /// The storage failed (an I/O error, a full disk), not the data or the caller.
    pub fn is_storage_failure(&self) -> bool {
        match self {
            IndexError::Db(e) => matches!(**e, redb::Error::Io(_) | redb::Error::PreviousIo),
            IndexError::Io { .. } => true,
            _ => false,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for IndexError {
            fn from(e: $t) -> IndexError {
                IndexError::Db(Box::new(redb::Error::from(e)))
            }
        }
    )*};
}

impl From<redb::Error> for IndexError {
    fn from(e: redb::Error) -> IndexError {
        IndexError::Db(Box::new(e))
    }
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
